#!/usr/bin/env bash
# Fetch real photos that Debian ships (no other network access needed) into work_data/photos/.
# Used to train the shipped default model (docs/MODELS.md). Sources and licences:
#   opencv-doc        examples/data: the OpenCV sample images (BSD-style licence of the OpenCV docs)
#   mate-backgrounds  backgrounds/mate/nature + Elephants: MATE desktop photos (GPL-2+/CC-BY-SA, see the package)
# Usage: scripts/fetch_photos.sh [DEST]   (needs apt-get; no root needed for `apt-get download`)
set -euo pipefail
dest=${1:-work_data/photos}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$dest"
(cd "$tmp" && apt-get download opencv-doc mate-backgrounds >/dev/null)
for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$tmp/x"; done
cv="$tmp/x/usr/share/doc/opencv-doc/examples/data"
for f in HappyFish.jpg aero1.jpg aero3.jpg aloeL.jpg apple.jpg baboon.jpg basketball1.png board.jpg \
         building.jpg butterfly.jpg fruits.jpg graf1.png home.jpg leuvenA.jpg leuvenB.jpg messi5.jpg orange.jpg \
         pic1.png pic3.png pic5.png rubberwhale1.png smarties.png squirrel_cls.jpg stuff.jpg box_in_scene.png \
         lena.jpg licenseplate_motion.jpg ela_original.jpg left01.jpg; do
  [ -f "$cv/$f" ] && cp "$cv/$f" "$dest/opencv_$f"
done
for f in "$tmp"/x/usr/share/backgrounds/mate/nature/*.jpg "$tmp"/x/usr/share/backgrounds/mate/abstract/Elephants.jpg; do
  cp "$f" "$dest/mate_$(basename "$f")"
done
echo "$(ls "$dest" | wc -l) photos in $dest"
