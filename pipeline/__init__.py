"""Config, graphs, scheduling, alerts and the command line."""
