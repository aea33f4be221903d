"""``python -m durablemap``: the same as the ``durablemap`` command."""

from durablemap.cli import main

if __name__ == "__main__":
    main(prog_name="durablemap")
