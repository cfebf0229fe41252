// A box of a JPEG decoded to RGB with libjpeg-turbo, without decoding the rest: jpeg_crop_scanline skips
// the IDCT and colour conversion of the columns outside it, jpeg_skip_scanlines those of the rows above
// it, and decoding stops after its last row. Used by mobilenetv3/jpeg_crop.py.
#include <csetjmp>
#include <cstdio>
#include <cstring>

#include <jpeglib.h>

namespace {

// Columns decoded beyond each side of the box: fancy upsampling computes the edge columns of a cropped
// region from fewer chroma samples than a whole decode does, so those are decoded and thrown away.
constexpr int kMargin = 16;

struct ErrorManager {
  jpeg_error_mgr pub;
  std::jmp_buf jump;
  char *message;
};

void OnError(j_common_ptr cinfo) {
  ErrorManager *err = reinterpret_cast<ErrorManager *>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

// Corrupt data (libjpeg's warnings, level -1) is an error, as in simplejpeg's strict mode: a truncated
// file raises instead of decoding to grey.
void OnMessage(j_common_ptr cinfo, int level) {
  if (level < 0) OnError(cinfo);
}

}  // namespace

// Rows [top, top + height) and columns [left, left + width) of the image decoded at 1/scale (1, 2, 4 or 8;
// coordinates in the scaled image) into out, height x width x 3 bytes. Returns 0, or -1 with up to
// JMSG_LENGTH_MAX bytes of message.
extern "C" int DecodeJpegCrop(const unsigned char *data, unsigned long size, int scale, int top, int left,
                              int height, int width, unsigned char *out, char *message) {
  jpeg_decompress_struct cinfo;
  ErrorManager err;
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = OnError;
  err.pub.emit_message = OnMessage;
  err.message = message;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return -1;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, size);
  jpeg_read_header(&cinfo, TRUE);
  cinfo.out_color_space = JCS_RGB;
  cinfo.scale_num = 1;
  cinfo.scale_denom = scale;
  jpeg_start_decompress(&cinfo);
  const int image_width = cinfo.output_width, image_height = cinfo.output_height;
  if (top < 0 || left < 0 || height < 1 || width < 1 || top + height > image_height || left + width > image_width) {
    std::snprintf(message, JMSG_LENGTH_MAX, "box %dx%d at (%d, %d) outside the %dx%d image", width, height, left,
                  top, image_width, image_height);
    jpeg_destroy_decompress(&cinfo);
    return -1;
  }
  const int first = left > kMargin ? left - kMargin : 0;
  const int end = left + width + kMargin < image_width ? left + width + kMargin : image_width;
  JDIMENSION xoffset = first, columns = end - first;
  jpeg_crop_scanline(&cinfo, &xoffset, &columns);  // widens to whole iMCUs
  JSAMPARRAY row = (*cinfo.mem->alloc_sarray)(reinterpret_cast<j_common_ptr>(&cinfo), JPOOL_IMAGE,
                                              columns * cinfo.output_components, 1);
  if (top > 0) jpeg_skip_scanlines(&cinfo, top);
  for (int y = 0; y < height; ++y) {
    jpeg_read_scanlines(&cinfo, row, 1);
    std::memcpy(out + static_cast<size_t>(y) * width * 3, row[0] + static_cast<size_t>(left - xoffset) * 3,
                static_cast<size_t>(width) * 3);
  }
  jpeg_abort_decompress(&cinfo);  // the rows below the box are never decoded
  jpeg_destroy_decompress(&cinfo);
  return 0;
}
