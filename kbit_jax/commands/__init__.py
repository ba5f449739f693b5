"""One module per `kbit` command (kbit_jax/main.py's table): its own absl FlagValues
`FLAGS`, `main()` making the command's one library call, and `ERRORS`, the exception
types that are bad input (printed as `kbit CMD: <what>: <message>`)."""
