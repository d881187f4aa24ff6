"""Command-line interface: `firm-ray` and `python -m firm_ray`."""
