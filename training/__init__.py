"""Datasets, losses, training and evaluation. Never imported on the edge path."""
