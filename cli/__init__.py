"""The click front end (installed as ``fesaug.cli``): parse arguments, call one library function, print."""
