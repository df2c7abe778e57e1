"""One module per `q35` command (argument parsing and the screen it prints)."""
