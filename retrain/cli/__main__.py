"""`python -m retrain.cli`: the same as the `retrain` console script."""

from retrain.cli.app import main

if __name__ == "__main__":
    main()
