"""The engine daemon: a supervisor process around a child that runs user code.

Kept free of imports: the child process imports only what runs user code.
"""
