"""What every command shares and what depends on nothing else of the workspace: the error convention, the
challenge's layout, nnU-Net's folders and subprocesses."""
