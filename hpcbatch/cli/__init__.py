"""The ``hpcbatch`` command line: a click CLI on top of :mod:`hpcbatch.client`."""
