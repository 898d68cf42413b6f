# An image of your own: the electra-serve server with your exported models instead of the demo ones.
# Build it from the folder that holds your `model-repository/` (what `electra-export --output`
# wrote), not from this repository, whose .dockerignore keeps model files out of its own builds:
#
#   cp deploy/own-model.Dockerfile /path/to/work/Dockerfile && cd /path/to/work
#   docker build --build-arg BASE=electra-serve:0.1.0-cpu -t my-electra:1 .
#
ARG BASE=electra-serve:0.1.0-cpu
FROM ${BASE}
# /models (the demo repository) stays as it was; this image serves its own folder, owned by the
# image's user so that it can read it whatever mode the exporting user's umask gave the files.
COPY --chown=10001:10001 model-repository /srv/models
ENV ELECTRA_MODEL_REPOSITORY=/srv/models
