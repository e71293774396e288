"""`python -m fesaug` (and `torchrun -m fesaug`) run the CLI."""

from fesaug.cli.main import main

if __name__ == "__main__":
    main()
