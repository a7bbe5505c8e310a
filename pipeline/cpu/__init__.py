"""The plain GStreamer graph (the CPU default): sources, the graph, the inference scheduler."""
