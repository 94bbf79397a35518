"""hpcbatch: AWS Batch for a cluster you own."""

__version__ = "0.1.0"
