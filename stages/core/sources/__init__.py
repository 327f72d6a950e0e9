"""Problem sources: files, Hugging Face datasets on disk, reasoning-gym, the toy tasks."""
