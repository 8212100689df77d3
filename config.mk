# Feature switches for the build. Override on the command line, e.g.
#   make OPT="-O0 -g"
# PREFIX is where `make install`-style deployments would put programs.
PREFIX ?= /usr/local
