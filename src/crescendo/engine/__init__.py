"""The sequential layer-wise engine: one calibration loop for every method and architecture."""
