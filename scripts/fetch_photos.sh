#!/usr/bin/env bash
# Fetch real photos that Debian ships (no other network access needed) into work_data/photos/ and
# work_data/photos_lomiri/ (a folder of its own, so that configs using only the first keep their label caches).
# Used to train the shipped default model (docs/MODELS.md). Sources and licences:
#   opencv-doc        examples/data: the OpenCV sample images (BSD-style licence of the OpenCV docs)
#   mate-backgrounds  backgrounds/mate/nature + Elephants: MATE desktop photos (GPL-2+/CC-BY-SA, see the package)
#   lomiri-wallpapers-16.04 (all 15) and -20.04 (Kleiber only; the others are paintings): Ubuntu community
#                     photos, CC-BY-4.0 / CC-BY-SA-4.0 / CC0-1.0 per photo (see the packages' copyright files)
# Never plasma-workspace-wallpapers: those photos are reserved for the project's own held-out checks.
# Usage: scripts/fetch_photos.sh [DEST [DEST_LOMIRI]]   (needs apt-get; no root needed for `apt-get download`)
set -euo pipefail
dest=${1:-work_data/photos}
dest_lomiri=${2:-${dest}_lomiri}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$dest" "$dest_lomiri"
(cd "$tmp" && apt-get download opencv-doc mate-backgrounds lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 >/dev/null)
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
bg="$tmp/x/usr/share/backgrounds"
for f in "$bg"/*_by_*.jpg; do
  case "$(basename "$f")" in
    Fossa_by_*|Infinite-Sea_by_*|Painting-Colors_by_*) ;;  # 20.04's illustrations, not photos
    *) cp "$f" "$dest_lomiri/" ;;
  esac
done
echo "$(ls "$dest" | wc -l) photos in $dest, $(ls "$dest_lomiri" | wc -l) in $dest_lomiri"
