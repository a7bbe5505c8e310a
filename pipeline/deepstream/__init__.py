"""The DeepStream graph (Jetson Orin / dGPU, DeepStream 7.1, pyds 1.2.0).

* :mod:`pipeline.deepstream.availability`: whether pyds and the DeepStream elements are here.
* :mod:`pipeline.deepstream.render`: the new nvstreammux's key file, generated from the typed config.
* :mod:`pipeline.deepstream.graph`: the element plan, checked element creation and linking, the bus policy
  and the main loop.
* :mod:`pipeline.deepstream.meta`: the only code that touches pyds structures (frames, surfaces, OSD text).
* :mod:`pipeline.deepstream.probe`: the score probe (frames out of each batch) and the OSD probe.
* :mod:`pipeline.clip_path`: the frames' way to scored clips, through the CPU graph's clip
  assembly, batching scheduler and clip inference.
* :mod:`pipeline.deepstream.app`: ``zsad run --graph deepstream``: engines, outputs, probes and the graph.

This package imports on any machine: ``gi``/``Gst`` and ``pyds`` are imported only when a graph is built.
"""
