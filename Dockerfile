# syntax=docker/dockerfile:1
# imagenet-kit image: `docker compose up` serves the demo; the compose `train` service runs a recipe
# through make. Build: docker build -t imagenet-kit .
#
# Why CUDA 13.0 and the small `base` flavour: torch==2.14.1 from PyPI (constraints.txt) is a CUDA 13.0
# build that ships its own CUDA runtime, cuDNN and NCCL as wheels, and FFCV's extension has no CUDA
# code. The base image only has to carry the CUDA version that the NVIDIA container toolkit checks
# against the host driver (>= 580 for 13.0); a -cudnn or -devel flavour would add a second, unused
# cuDNN/toolkit. Both stages start from the same Python layer, so the venv built in one runs unchanged
# in the other.
ARG BASE=nvidia/cuda:13.0.2-base-ubuntu22.04
FROM ${BASE} AS python
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Python 3.11 (numpy==2.4.6 needs it) comes from the base's own archive on Debian bookworm (BASE=debian:bookworm
# builds the same image without CUDA, as `make image-check` does), and from the deadsnakes PPA on Ubuntu 22.04,
# whose archive has only 3.10 (key fetched by its full fingerprint). Apt packages are not version-pinned:
# Ubuntu drops old versions from its archive on every security update, which would break the build; the Python
# side is pinned by constraints.txt.
# hadolint ignore=DL3008
RUN apt-get update \
 && . /etc/os-release \
 && if [ "$ID" = ubuntu ]; then \
      apt-get install -y --no-install-recommends ca-certificates curl gnupg \
      && install -d -m 0755 /etc/apt/keyrings \
      && curl -fsSL "https://keyserver.ubuntu.com/pks/lookup?op=get&search=0xF23C5A6CF475977595C89F51BA6932366A755776" \
         | gpg --dearmor -o /etc/apt/keyrings/deadsnakes.gpg \
      && echo "deb [signed-by=/etc/apt/keyrings/deadsnakes.gpg] https://ppa.launchpadcontent.net/deadsnakes/ppa/ubuntu $VERSION_CODENAME main" \
         > /etc/apt/sources.list.d/deadsnakes.list \
      && apt-get update \
      && apt-get purge -y curl gnupg; \
    fi \
 && apt-get install -y --no-install-recommends ca-certificates python3.11 python3.11-venv \
 && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/*

FROM python AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# FFCV compiles a C++ extension against OpenCV and libjpeg-turbo, found through pkg-config.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config python3.11-dev \
      libopencv-dev libturbojpeg0-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt ./
# The dependencies first, in a layer of their own (torch and its CUDA wheels are most of the image), so that a
# change to the kit's code rebuilds only the small layer after it; with the s3 extra, for train.mirror on S3. Behind a proxy that re-signs TLS, hand pip its
# CA bundle without baking it into a layer: --secret id=ca,src=/path/to/ca-bundle.crt.
RUN --mount=type=secret,id=ca,target=/run/secrets/ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['s3']))" \
    > /tmp/dependencies.txt \
 && pip install --no-cache-dir -c constraints.txt -r /tmp/dependencies.txt
COPY imagenet_kit ./imagenet_kit
# No network here: the build backend (setuptools) came with the dependencies. The import check fails the build
# here rather than at the first `docker compose up`.
RUN pip install --no-cache-dir --no-deps --no-build-isolation -c constraints.txt . \
 && python -c "import ffcv, imagenet_kit.cli"
# The runtime stage installs exactly the packages that own the system libraries FFCV's extension and the OpenCV
# wheel FFCV imports load (OpenCV core/imgproc, TurboJPEG, libGL and what they pull in) instead of naming them by
# hand, so it gets no -dev package or compiler, and a library no package owns fails the build here. A library is
# looked up by the path ldd gives, else by its real path (some are reached through /etc/alternatives).
RUN ldd /opt/venv/lib/python3.11/site-packages/ffcv/_libffcv*.so /opt/venv/lib/python3.11/site-packages/cv2/cv2*.so \
    | awk '$2 == "=>" && $3 ~ /^\// && $3 !~ /^\/opt\/venv\// {print $3}' \
    | sort -u \
    | while read -r lib; do \
        dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")" || exit 1; \
      done \
    | cut -d: -f1 | sort -u > /opt/venv/apt-runtime.txt

FROM python AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=builder /opt/venv/apt-runtime.txt /tmp/apt-runtime.txt
# make: the compose `train` service runs recipes through the Makefile. gcc, g++ and Python's headers:
# train.compile (torch.compile) builds C code at its first kernel, Triton's launcher on a GPU and inductor's C++
# kernels on a CPU (about 200 MB; without them `--compile` fails at the first step).
# hadolint ignore=DL3008
RUN apt-get update \
 && xargs -a /tmp/apt-runtime.txt apt-get install -y --no-install-recommends make gcc g++ libc6-dev python3.11-dev \
 && rm -rf /var/lib/apt/lists/* /tmp/apt-runtime.txt
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The same import check as the builder's, where the image runs: a system library the runtime lacks fails here.
RUN python -B -c "import ffcv, imagenet_kit.cli"
# uid 1000 is the default user on Ubuntu EC2 hosts, so files written to bind-mounted runs/ and betons/
# belong to that user on the host. The recipes and the embedded sample (6.6 MB, so `make mini` can smoke-test
# a GPU host before the real data arrives) are package data of the installed kit: nothing to copy or link.
RUN useradd --create-home --uid 1000 --shell /bin/bash kit \
 && install -d -o kit -g kit /workspace /workspace/runs /workspace/betons
WORKDIR /workspace
COPY --chown=kit:kit Makefile ./
# The compose train service's entrypoint: make, with a stop signal passed on to the kit (see the script).
COPY docker/train-entrypoint.sh /usr/local/bin/train-entrypoint
USER 1000:1000
EXPOSE 7860
# The demo listens on 0.0.0.0:7860; model loading takes a while on CPU, hence the start period.
# Python instead of curl: no extra package, and any failure (refused, timeout, HTTP error) is an
# uncaught exception, i.e. exit status 1, the one Docker reads as unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=4)"]
ENTRYPOINT ["imagenet-kit"]
CMD ["demo", "--host", "0.0.0.0"]
