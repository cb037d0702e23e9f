"""The engine daemon: a supervisor process around a child that runs user code."""
