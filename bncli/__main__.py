"""``python -m bncli``: the same CLI as the ``bncli`` console script."""

from bncli.cli.main import main

if __name__ == "__main__":
    main()
