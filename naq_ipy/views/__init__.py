"""One rendering of each record, as text and HTML, shared by the CLI, the magics and the panels."""
