"""The node agent: discovers its machine, runs the attempts the head sends, reports exits."""
