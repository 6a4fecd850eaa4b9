"""One module per `ftprefix` subcommand; each defines `register(subparsers)`."""
