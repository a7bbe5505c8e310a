"""The DeepStream graph (Jetson Orin / dGPU, DeepStream 7.1, pyds 1.2.0).

* :mod:`pipeline.deepstream.availability`: whether pyds and the DeepStream elements are here.
* :mod:`pipeline.deepstream.render`: the nvstreammux / nvdspreprocess / nvinfer key files, generated from
  the typed config and the engine manifests (never hand-edited).
* :mod:`pipeline.deepstream.graph`: the element plan, checked element creation and linking, the bus policy
  and the main loop.
* :mod:`pipeline.deepstream.app`: ``zsad run --graph deepstream``: engines, per-camera alerts, the score
  probe (:mod:`pipeline.deepstream.probe`) and the graph.

This package imports on any machine: ``gi``/``Gst`` and ``pyds`` are imported only when a graph is built.
"""
