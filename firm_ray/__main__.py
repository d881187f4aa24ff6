"""`python -m firm_ray` is the same as the `firm-ray` console script."""

from firm_ray.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
