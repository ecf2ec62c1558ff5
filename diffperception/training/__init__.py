"""Training loops for task heads (and learned additions) on a frozen diffusion trunk."""
