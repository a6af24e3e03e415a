"""Feature trunks shared by metrics: each module builds one network family and nothing else.

Modules here import their heavy dependencies inside functions, so importing the package is free.
"""
