"""`python -m catga`: the same command line as `catga`."""

from catga.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
