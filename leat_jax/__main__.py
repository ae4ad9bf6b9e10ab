"""``python -m leat_jax``: the ``leat-jax`` command."""
from leat_jax.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
