"""Wan2.2 TI2V-5B text-to-video and text+image-to-video served on Ray Serve."""
