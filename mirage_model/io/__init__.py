"""Files the model layer reads and writes itself: video (PyAV), images, atomic writes, the shard sample format."""
