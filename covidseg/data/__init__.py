"""CT data in and out of the workspace: the challenge download, synthetic phantoms, CTs to segment."""
