"""How a denoising run steps: samplers by name (`schedulers`) and few-step speed models (`speed`)."""
