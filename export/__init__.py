"""Export of the decoder and the SD networks to ONNX (and TensorRT plans)."""
