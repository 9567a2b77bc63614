"""Application assembly: the ``redgrid`` command, the demo data, imports and exports."""
