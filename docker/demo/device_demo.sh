#!/bin/sh
# The compose demo, run on the device image: a phone-class client enrolls its adapter (uploaded only
# if the server lacks it) and transcribes a file over gRPC, personalised by that adapter.
set -eu
# the first 'token:tenant' entry of SPLITASR_API_KEYS, unless a token is given
SPLITASR_DEVICE_TOKEN="${SPLITASR_DEVICE_TOKEN:-${DEMO_API_KEYS%%:*}}"
export SPLITASR_DEVICE_TOKEN
splitasr-device status
splitasr-device enroll --name sample
splitasr-device transcribe /demo/audio/goforward.flac
