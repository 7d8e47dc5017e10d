#!/bin/sh
echo "Hello, @NAME@! (built by a RUN step in lbuild)"
