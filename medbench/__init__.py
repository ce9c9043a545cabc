"""medbench: specialized medical segmentation architectures against general-purpose
vision models, trained under one protocol and tracked in MLflow."""

__version__ = "0.1.0"
