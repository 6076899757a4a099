"""Reference image-to-video job for gpuflow (a CPU stand-in for a Wan2.2-style I2V model)."""
