"""What every command shares: the error convention, the challenge's layout, nnU-Net's folders and runs."""
