/* The mask brush of the Generate form's input image: paint the area to redraw (inpainting) on
 * a canvas over the picture; the mask is sent the OpenAI way, a PNG the picture's size whose
 * painted pixels are fully transparent and the rest opaque. */
import { $ } from "../lib/dom.js";

const PAINT = "rgba(255, 0, 160, 0.55)";
let picture = null; // the input image, loaded
let paint = null; // an offscreen canvas the picture's size: what was painted
let painted = false;

export function wireMaskBrush() {
  const canvas = $("gen-mask-canvas");
  // The brush's range is the page's own tool, not a setting of the server's (index.html writes
  // no limits: the drawing settings' come from /v1/settings).
  Object.assign($("gen-mask-brush"), { min: 2, max: 128, value: 16 });
  // A border is never negative; its upper limit is the server's, whose 400 names it.
  $("gen-outpaint").min = 0;
  let drawing = false;
  const at = (event) => {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * (canvas.width / box.width), (event.clientY - box.top) * (canvas.height / box.height)];
  };
  canvas.addEventListener("pointerdown", (event) => {
    if (!picture) return;
    drawing = true;
    canvas.setPointerCapture(event.pointerId);
    dab(...at(event));
  });
  canvas.addEventListener("pointermove", (event) => { if (drawing) dab(...at(event)); });
  for (const type of ["pointerup", "pointercancel"]) canvas.addEventListener(type, () => { drawing = false; });
  $("gen-mask-clear").addEventListener("click", clearMask);
}

/** Show the brush over a new input image (a data URI or an image URL), or hide it (null). */
export function setMaskPicture(src) {
  picture = null;
  painted = false;
  $("gen-mask-set").hidden = !src;
  if (!src) return;
  const image = new Image();
  image.onload = () => {
    picture = image;
    paint = document.createElement("canvas");
    paint.width = image.naturalWidth;
    paint.height = image.naturalHeight;
    $("gen-mask-canvas").width = image.naturalWidth;
    $("gen-mask-canvas").height = image.naturalHeight;
    redraw();
  };
  image.src = src;
}

function dab(x, y) {
  const context = paint.getContext("2d");
  // The brush size is in pixels of the picture, whatever size the canvas shows at.
  const radius = Number($("gen-mask-brush").value) / 2;
  context.fillStyle = "#000";
  context.beginPath();
  context.arc(x, y, radius, 0, 2 * Math.PI);
  context.fill();
  painted = true;
  redraw();
}

function redraw() {
  const canvas = $("gen-mask-canvas");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (!picture) return;
  context.drawImage(picture, 0, 0);
  // The paint shown tinted over the picture: a layer of colour where the paint is.
  const layer = document.createElement("canvas");
  layer.width = canvas.width;
  layer.height = canvas.height;
  const tint = layer.getContext("2d");
  tint.drawImage(paint, 0, 0);
  tint.globalCompositeOperation = "source-in";
  tint.fillStyle = PAINT;
  tint.fillRect(0, 0, layer.width, layer.height);
  context.drawImage(layer, 0, 0);
}

export function clearMask() {
  if (paint) paint.getContext("2d").clearRect(0, 0, paint.width, paint.height);
  painted = false;
  redraw();
}

/** The mask as a PNG data URI (painted = transparent = redrawn), or undefined when nothing is painted. */
export function maskDataUri() {
  if (!picture || !painted) return undefined;
  const mask = document.createElement("canvas");
  mask.width = paint.width;
  mask.height = paint.height;
  const context = mask.getContext("2d");
  context.fillStyle = "#000";
  context.fillRect(0, 0, mask.width, mask.height);
  context.globalCompositeOperation = "destination-out"; // the paint cuts holes: alpha 0 where painted
  context.drawImage(paint, 0, 0);
  return mask.toDataURL("image/png");
}
