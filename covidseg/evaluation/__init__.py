"""Comparing segmentations with references."""
