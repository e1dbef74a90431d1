"""Speech datasets: NeMo-style manifests and the synthetic speakers that make them."""
