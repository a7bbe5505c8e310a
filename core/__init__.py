"""The bottom layer: the config schema, the GStreamer toolkit and small helpers. It imports nothing
else of ours."""
