"""``python -m dvdexit_cli``: the same as the ``dvdexit`` command."""

from dvdexit_cli.cli.app import main

if __name__ == "__main__":
    main()
