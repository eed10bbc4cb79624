"""The ``dvdexit`` command line: thin Typer commands over the library."""
