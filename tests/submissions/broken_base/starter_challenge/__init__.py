# Shadows the Crunch's package (the code directory goes first on sys.path), so that this host
# alone cannot import the base class: the submission's fault.
raise ImportError("this submission ships a broken starter_challenge package")
