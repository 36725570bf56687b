"""The torch-free runtime: everything serving needs, on numpy, Pillow and ONNX Runtime."""
