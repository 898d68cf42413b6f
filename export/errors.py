"""The one exception the exporter's CLI turns into a single clear line on stderr and a non-zero exit."""


class ExportError(Exception):
    pass
