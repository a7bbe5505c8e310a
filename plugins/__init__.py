"""What attaches to the graph: probes, meta adapters and custom elements."""
